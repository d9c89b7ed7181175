"""A loopback stand-in for an Azure Machine Learning workspace's MLflow endpoint (no emulator
of Azure ML exists) and the managed-identity token source its clients sign with."""
