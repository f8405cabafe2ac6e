"""Policy kinds: each a package of the same shape behind one contract (contract.py), listed
in registry.py and driven by the daemon through host.py."""
