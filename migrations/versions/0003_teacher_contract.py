"""teachers: the declared input contract (preprocess), the owner's expected accuracy, and an
architecture that may be null (an ONNX or remote teacher is a black box of any architecture)

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('teachers', schema=None) as batch_op:
        batch_op.add_column(sa.Column('preprocess', sa.JSON().with_variant(postgresql.JSONB(), 'postgresql'), nullable=True))
        batch_op.add_column(sa.Column('expected_accuracy', sa.Float(), nullable=True))
        batch_op.alter_column('architecture', existing_type=sa.String(length=64), nullable=True)


def downgrade() -> None:
    op.execute("UPDATE teachers SET architecture = 'onnx' WHERE architecture IS NULL")
    with op.batch_alter_table('teachers', schema=None) as batch_op:
        batch_op.alter_column('architecture', existing_type=sa.String(length=64), nullable=False)
        batch_op.drop_column('expected_accuracy')
        batch_op.drop_column('preprocess')
