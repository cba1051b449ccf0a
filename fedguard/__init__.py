"""fedguard fedguard package."""
