"""Example applications using the A-Track SDK (used by the demo and the tests)."""
