"""The operator CLI ``rackcells``: tables for people, ``-o json`` for programs.

It talks to a leaf cell or the top cell over gRPC with the generated stubs in
:mod:`rackcells.v1`, and depends on nothing server-side.
"""

__all__: list[str] = []
