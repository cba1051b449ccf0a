"""fedguard serving package."""
