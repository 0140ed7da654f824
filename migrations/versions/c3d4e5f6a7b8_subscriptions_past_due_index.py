"""subscriptions: a partial index on past_due_since for the grace check

Revision ID: c3d4e5f6a7b8
Revises: b7c1d2e3f4a5
Create Date: 2026-11-24 13:00:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'c3d4e5f6a7b8'
down_revision = 'b7c1d2e3f4a5'
branch_labels = None
depends_on = None


def upgrade():
    op.create_index(
        'ix_subscriptions_past_due_since',
        'subscriptions',
        ['past_due_since'],
        unique=False,
        sqlite_where=sa.text("status = 'past_due'"),
        postgresql_where=sa.text("status = 'past_due'"),
    )


def downgrade():
    op.drop_index('ix_subscriptions_past_due_since', table_name='subscriptions')
