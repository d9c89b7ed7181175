"""Azurite, the Azure Storage emulator from npm: plain HTTP with the account key, and HTTPS
with OAuth bearer tokens (``npm ci --prefix backends/azure`` installs it)."""
