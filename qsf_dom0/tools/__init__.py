"""dom0 commands, one module each (qvm_folder_share -> qvm-folder-share), as qubesadmin.tools."""
