"""Label Studio ML backend (Flask). Not built yet: arrives with issue 3."""
