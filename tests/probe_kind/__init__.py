"""A minimal policy kind for the contract's tests: it records every hook call, keeps a
counter in its persisted state, changes one saved setting, and serves three commands."""
