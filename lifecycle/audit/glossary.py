"""The words a walk-back report uses, defined for readers who are not engineers.

Every technical term the report prints is here, in the order a reader meets
them, so a compliance officer can read the report without asking anyone.
The definitions follow the sources fedguard's design cites: differential
privacy (Dwork & Roth 2014; DP-SGD, Abadi et al. 2016), secure aggregation
(Bell et al. 2020), CycloneDX 1.6 for the ML-BOM, OpenSSF Model Signing,
Ed25519 (RFC 8032).
"""

from __future__ import annotations

GLOSSARY: tuple[tuple[str, str], ...] = (
    ("model", "A trained program that answers questions about new cases (for example: is this tumour benign?)."),
    ("version", "One exact, unchangeable copy of a model. A new training produces a new version number."),
    ("environment", "A named place where a model answers requests, such as one clinic or one region."),
    ("deployment", "The choice of which version answers requests in an environment, and how the requests are "
                   "shared between versions."),
    ("stable version", "The version that answers requests by default in an environment."),
    ("canary", "A new version tried on a small, fixed share of callers before everyone gets it."),
    ("shadow", "A new version that receives a copy of the requests to be compared, but whose answers are never "
               "given to anyone."),
    ("kill switch", "An emergency stop: every request is refused, or only one named (pinned) version answers."),
    ("signature", "A cryptographic seal over every file of a version. If a single byte changes, the signature no "
                  "longer verifies. It also names the key, and so the publisher, that sealed it."),
    ("key fingerprint", "A short code that identifies a cryptographic key (the SHA-256 hash of the key), like a "
                        "serial number."),
    ("hash (SHA-256)", "A 64-character code computed from a file or record. Any change to the content gives a "
                       "completely different code, so a matching hash proves the content is the same."),
    ("artifact digest", "The hash of a version's stored files: the name under which the registry keeps them."),
    ("ML-BOM", "Machine-learning bill of materials (CycloneDX 1.6): the signed list of what a version is made of: "
               "which sites' data, which settings, which software."),
    ("federated learning", "Training one model across several organisations without moving their data: each site "
                           "trains on its own records and sends only model updates."),
    ("site", "An organisation (such as a hospital) that took part in training with its own data."),
    ("enrolled identity", "The name and key a site received when it joined the consortium. fedguard records sites "
                          "by this identity, never by a name they report about themselves."),
    ("data manifest", "A hash computed by a site over its training records. It identifies the data without "
                      "revealing it."),
    ("round", "One step of federated training: sites train locally, their updates are combined into the model."),
    ("differential privacy", "A mathematical guarantee that the trained model reveals almost nothing about any one "
                             "person (record-level) or any one site (site-level), obtained by adding calibrated "
                             "random noise during training."),
    ("ε (epsilon)", "The privacy loss of differential privacy: how much the model can reveal about one person or "
                    "one site. Smaller is more private; values around 1 to 8 are common in practice."),
    ("δ (delta)", "The small probability with which the ε guarantee may fail; it is kept far below one in the "
                  "number of records."),
    ("record-level and site-level ε", "Record-level ε protects each person's record within a site; site-level ε "
                                      "protects each site's whole contribution."),
    ("secure aggregation", "A protocol by which the coordinator learns only the sum of the sites' updates, never "
                           "one site's update on its own."),
    ("watermark", "A hidden, verifiable mark in the model that proves who owns it if a copy turns up elsewhere."),
    ("gate", "A declared check a version must pass before it may move to a stage (for example: accuracy at least "
             "0.9, ε at most 3, consent clean). Each decision records the measured value and the threshold."),
    ("stage", "Where a version stands in an environment: registered, staging (being checked), production "
              "(answering real requests)."),
    ("approval", "A decision by a named approver, signed with their personal key so they cannot later deny it."),
    ("override", "A signed decision by an approver to let a version through although a gate failed. Always "
                 "recorded and shown in red, with the reason given."),
    ("consent withdrawal", "A site's (or its patients') withdrawal of permission to use their data."),
    ("taint", "The mark on every version whose training used data whose consent was later withdrawn. A tainted "
              "version fails its gates."),
    ("supersede", "A newer version replaces an older one, for example when it was retrained without withdrawn "
                  "data."),
    ("audit trail", "The registry's list of every change, each entry sealed with the hash of the one before "
                    "(a hash chain), so an entry cannot be changed or removed unnoticed."),
    ("checkpoint", "A signed copy of the audit trail's latest hash, kept outside the database (and by the sites), "
                   "so that even a rewritten trail is detected."),
)
"""``(term, meaning)`` pairs, in reading order."""
