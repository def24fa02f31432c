"""convparity's shared machinery: registry, safe I/O, key ledger, writer, parity, CLI."""
