"""kdaudit's tests: unit/ mirrors the source packages, integration/ needs real services, science/ trains models."""
