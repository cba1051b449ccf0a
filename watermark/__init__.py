"""fedguard watermark package."""
