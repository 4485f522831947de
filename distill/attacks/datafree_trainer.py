"""The trainer every data-free attack shares (distill/datafree.py): one run at a time, a generator
synthesises the queries, each checkpoint is a progress "epoch"."""

DATAFREE_TRAINER = "kdaudit.distill.datafree:train_datafree"
