"""The qsf file server: 9P2000.L over a byte channel, confined to one folder."""
