"""A view of the cluster: the workloads' metadata, kept current by list+watch.

It sits beside the sources: the watches run on a thread of their own (runner.py) and
write an in-memory map (view.py); detection reads that map through pure functions
(resolve.py) and does no I/O. Modules: kinds (what is watched), meta (what is kept of an
object), view (the map and its tombstones), watch (list+watch of one resource), owners
(owners of other kinds, fetched once), connect (in-cluster or kubeconfig), runner (the
thread), resolve (entity and GitOps answers).
"""
