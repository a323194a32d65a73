"""The apiserver's audit policy: read it, evaluate it, and derive it from detection's needs.

- `document`: the audit.k8s.io/v1 Policy as the apiserver reads it (refused, ignored keys).
- `evaluate`: the level, stages and managed fields a policy gives one request.
- `builtin`: the built-in resources (group, scope, subresources, verbs) and the project's
  stance on Secrets and noise.
- `needs`: what each detection rule needs recorded, and for which actors.
- `generate`: the policy that gives exactly that and drops the rest.
- `check`: what a given policy starves, exposes or gets wrong.
"""
