"""Defences against distillation theft and the evidence for choosing one (`kdaudit defend`, issue 19).

A *defence* is what the owner deploys: a training-time change to the teacher (the nasty
teacher at strength omega), a serving-time output policy applied by the endpoint to the
teacher's answers (distill/access.py), or both. `registry` names and parses them, `utility`
measures what an honest API user loses, `engine` runs the attack panel against each one,
`matrix` assembles the defence x attack matrix and `pareto` picks the recommendation.
`config` (`DefendConfig`, the audits it plans) and `registry` are torch-free: the API validates
and sizes a `POST /v1/defences` request with them.

Kept import-free on purpose: distill/access.py imports `transforms` from here, and the
other modules import access, so an eager import in this file would be circular.
"""
