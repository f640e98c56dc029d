"""Orchestration: what a command, the daemon or the gateway process does, as one call.

The arrows run one way::

    cli/  ──►  services/  ──►  fleet/ · gateway/ · billing/ · accounting/ · ledger/ · localcloud/ · demo/
                                   └──────────────►  config · clock · money · errors · naming

A command parses its options, makes one call into a service, and renders the result (a table
for people, JSON for scripts). Services open resources (the ledger, provider clients, backends),
call the adapters and the pure accounting, and map nothing themselves: errors are already
:mod:`spotctl.errors` types when they arrive here.
"""
