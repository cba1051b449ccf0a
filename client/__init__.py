"""fedguard client package."""
