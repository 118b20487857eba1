"""qvm-mount-folder: the client qube's command."""
