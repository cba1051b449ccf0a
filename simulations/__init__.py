"""fedguard simulations package."""
