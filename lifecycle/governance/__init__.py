"""Governance: declared promotion gates, stages per environment, signed approvals, consent and taint.

Governance is enforced, not advised (DESIGN.md §5): a version that fails its
declared gates, or whose lineage holds withdrawn data, cannot be promoted or
served, unless an approver signs an audited override.
"""
