"""qshampoo: Shampoo with 4-bit preconditioners for PyTorch."""
