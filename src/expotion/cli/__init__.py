"""The `expotion` command and its subcommands."""
