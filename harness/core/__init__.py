"""What every layer of the harness shares: errors, registries, value checks, devices, faults, locks.

Nothing here imports another harness package.
"""
