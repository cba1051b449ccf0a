"""The sample policy of docs/governance.md, every criterion declared (tests parse, store and evaluate it)."""

SAMPLE = """\
sensitive-attribute = "f1"
on-taint = "replace"
[staging]
min-accuracy = 0.90
max-record-epsilon = 8.0
signature-verified = true
consent-clean = true
max-drift = 0.2
[production]
min-accuracy = 0.92
max-record-epsilon = 3.0
max-site-epsilon = 10.0
signature-verified = true
watermark-verified = true
max-demographic-parity-difference = 0.10
max-equalized-odds-difference = 0.15
consent-clean = true
privacy-audit-passed = true
required-approvals = 2
"""
