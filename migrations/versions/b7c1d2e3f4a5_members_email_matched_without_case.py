"""members' email matched without case: an index on lower(email)

Revision ID: b7c1d2e3f4a5
Revises: 9f979fe500e8
Create Date: 2026-11-23 00:15:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'b7c1d2e3f4a5'
down_revision = '9f979fe500e8'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('members', schema=None) as batch_op:
        batch_op.drop_index('ix_members_email')
    op.create_index('ix_members_email_lower', 'members', [sa.text('lower(email)')], unique=False)


def downgrade():
    op.drop_index('ix_members_email_lower', table_name='members')
    with op.batch_alter_table('members', schema=None) as batch_op:
        batch_op.create_index('ix_members_email', ['email'], unique=False)
