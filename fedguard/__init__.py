"""The ``fedguard`` command: assembles each package's own CLI."""
