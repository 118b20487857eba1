"""A stand-in for qrexec on one Linux machine (tests and demo only; never installed in a qube).

Modules, one job each:
  layout         where things live under a simulator root; what a simulated qube is
  policy         Qubes policy files read and evaluated (pure)
  protocol       the frames on a qube's socket (documented there)
  daemon         dom0's qrexec: per-qube sockets, SO_PEERCRED, policy, services, streams
  client_vm      qrexec-client-vm of a simulated qube
  prompt         answers to policy `ask` lines (terminal or scripted)
  dom0_services  qsf's dom0 dialog inside the simulator (scripted or on the daemon's tty)
  runas          Unix identities of the qubes and how to run as them
  tree           building a root: trees, users, installed project files
  sim            the Python API (Sim) used by tests and the demo
  cli            the `qsf-sim` command
  mux            many calls over one virtio-serial port (QEMU guests)
  socket_service a socket service run as qrexec-agent runs one (header, relay)
  gui_domain     the simulated GUI domain: qubes' guivm and label for dom0, qsf-ask-agent
  xsession       a private X session (Xvfb, session bus, AT-SPI) for tests and the demo

Security model: a caller is the qube whose socket it used, and the daemon accepts a
connection only from that qube's Unix user (SO_PEERCRED); nothing a caller sends or
sets in its environment names it. As root every qube has its own system user
(qsfsim-NAME); without root all qubes share the invoking user (development only).

Not simulated: creating disposables for @dispvm calls (such a call fails with 125),
/etc/qubes/rpc-config options, QREXEC_SERVICE_PATH.
"""
