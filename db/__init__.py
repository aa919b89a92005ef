"""SQLAlchemy schema and Alembic migrations. Not built yet: arrives with issue 3."""
