"""fedguard coordinator package."""
