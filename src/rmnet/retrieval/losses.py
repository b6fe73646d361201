"""The hashing objectives the paper compares (DCH, DPN, CSQ, CRI), registered by name."""
