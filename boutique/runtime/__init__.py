"""The node runtime: the only trio code in boutique."""
