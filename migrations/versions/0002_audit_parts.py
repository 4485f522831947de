"""audit_parts: an audit's runs split by seed across several workers

Revision ID: 0002
Revises: 0001
Create Date: 2025-02-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('audit_parts',
    sa.Column('audit_id', sa.String(length=32), nullable=False),
    sa.Column('part', sa.Integer(), nullable=False),
    sa.Column('seeds', sa.JSON().with_variant(postgresql.JSONB(), 'postgresql'), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('claimed_by', sa.String(length=255), nullable=True),
    sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('current_run', sa.String(length=255), nullable=True),
    sa.Column('current_epoch', sa.Integer(), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['audit_id'], ['audits.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('audit_id', 'part', name='pk_audit_parts')
    )
    with op.batch_alter_table('audit_parts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_audit_parts_status'), ['status'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('audit_parts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_audit_parts_status'))

    op.drop_table('audit_parts')
