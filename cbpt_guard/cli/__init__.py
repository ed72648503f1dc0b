"""The command-line interface: thin click commands over the library.

This is the only layer that prints or chooses an exit code. Each command lives
in its own module and is imported only when it is invoked, so ``--help`` never
loads torch.
"""
