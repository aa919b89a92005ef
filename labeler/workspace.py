"""Where the project-scale commands work: a Label Studio project and our database.

Each value comes from its option or its environment variable (LABEL_STUDIO_URL,
LABEL_STUDIO_API_KEY, LABEL_STUDIO_PROJECT, DATABASE_URL).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Annotated, Optional

import typer

DEFAULT_DATABASE = "sqlite:///data/labeler.db"

LabelStudioUrl = Annotated[
    Optional[str], typer.Option("--label-studio-url", envvar="LABEL_STUDIO_URL", help="Label Studio's address.")
]
ApiKey = Annotated[
    Optional[str],
    typer.Option("--api-key", envvar="LABEL_STUDIO_API_KEY", help="Legacy token or personal access token."),
]
ProjectId = Annotated[
    Optional[int], typer.Option("--project", envvar="LABEL_STUDIO_PROJECT", help="Label Studio project id.")
]
DatabaseUrl = Annotated[
    str, typer.Option("--database-url", envvar="DATABASE_URL", help="SQLAlchemy URL of our database.")
]


@dataclass(frozen=True)
class Workspace:
    """A Label Studio server (and project) plus our database; connections are opened on first use."""

    label_studio_url: str | None = None
    api_key: str | None = None
    project_id: int | None = None
    database_url: str = DEFAULT_DATABASE
    writes: bool = True  # False: the commands that only read our database also work on a read-only one

    @property
    def label_studio(self) -> str:
        """Our database's name for this Label Studio (see `db.identity`); "" when none is given."""
        from db.identity import label_studio_identity

        return label_studio_identity(self.label_studio_url)

    def require_project(self) -> int:
        if self.project_id is None:
            raise ValueError("no project given: pass --project or set LABEL_STUDIO_PROJECT")
        return self.project_id

    @cached_property
    def client(self):
        """label-studio-sdk client (refreshes a personal access token by itself)."""
        from label_studio_sdk import LabelStudio

        if not self.label_studio_url or not self.api_key:
            raise ValueError("Label Studio is not set: pass --label-studio-url and --api-key (or LABEL_STUDIO_URL / LABEL_STUDIO_API_KEY)")
        return LabelStudio(base_url=self.label_studio_url.rstrip("/"), api_key=self.api_key)

    @cached_property
    def auth(self):
        """Authorization headers for raw downloads (see explain.labelstudio.fetch.LabelStudioAuth)."""
        from explain.labelstudio.fetch import LabelStudioAuth

        self.client  # same checks
        return LabelStudioAuth(self.label_studio_url, self.api_key)

    @cached_property
    def sessions(self):
        """Session factory of the migrated database (`db.migrating.open_database`: a database
        that cannot be opened, migrated or (when ``writes``) written raises one-line
        `DatabaseUnavailable`, a ValueError)."""
        from db.engine import session_factory
        from db.migrating import open_database

        return session_factory(open_database(self.database_url, writable=self.writes))
