"""OAuth 2.0: iClients, connection tokens, pending authorizations, account webhooks.

Revision ID: 0003_oauth
Revises: 0002_connections
Create Date: 2025-03-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_oauth"
down_revision: str | None = "0002_connections"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "iclients",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("account_id", sa.String(32), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("document", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_iclients"),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
            name="fk_iclients_account_id_accounts",
            ondelete="CASCADE",
        ),
    )
    op.create_index("ix_iclients_account_id", "iclients", ["account_id"])
    op.create_table(
        "oauth_tokens",
        sa.Column("connection_id", sa.String(32), nullable=False),
        sa.Column("tokens", sa.Text(), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("refresh_owner", sa.String(255), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("connection_id", name="pk_oauth_tokens"),
        sa.ForeignKeyConstraint(
            ["connection_id"],
            ["connections.id"],
            name="fk_oauth_tokens_connection_id_connections",
            ondelete="CASCADE",
        ),
    )
    op.create_table(
        "oauth_states",
        sa.Column("state_hash", sa.String(64), nullable=False),
        sa.Column("account_id", sa.String(32), nullable=False),
        sa.Column("connection_id", sa.String(32), nullable=False),
        sa.Column("iclient_id", sa.String(32), nullable=False),
        sa.Column("redirect_uri", sa.String(2048), nullable=False),
        sa.Column("code_verifier", sa.Text(), nullable=True),
        sa.Column("return_url", sa.String(2048), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("state_hash", name="pk_oauth_states"),
        sa.ForeignKeyConstraint(
            ["connection_id"],
            ["connections.id"],
            name="fk_oauth_states_connection_id_connections",
            ondelete="CASCADE",
        ),
    )
    op.create_index("ix_oauth_states_connection_id", "oauth_states", ["connection_id"])
    op.create_index("ix_oauth_states_created_at", "oauth_states", ["created_at"])
    op.create_table(
        "account_webhooks",
        sa.Column("account_id", sa.String(32), nullable=False),
        sa.Column("url", sa.String(2048), nullable=False),
        sa.Column("secret", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("account_id", name="pk_account_webhooks"),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
            name="fk_account_webhooks_account_id_accounts",
            ondelete="CASCADE",
        ),
    )


def downgrade() -> None:
    op.drop_table("account_webhooks")
    op.drop_index("ix_oauth_states_created_at", table_name="oauth_states")
    op.drop_index("ix_oauth_states_connection_id", table_name="oauth_states")
    op.drop_table("oauth_states")
    op.drop_table("oauth_tokens")
    op.drop_index("ix_iclients_account_id", table_name="iclients")
    op.drop_table("iclients")
