"""What a corpus is and how it is read and written.

Atomic files (:mod:`.atomic`), the build lock (:mod:`.lock`), versioned table schemas
(:mod:`.schemas`), per-study checkpoints and their markers (:mod:`.checkpoints`), shards
(:mod:`.compact`), object storage (:mod:`.storage`), DuckDB views (:mod:`.sql`), the
corpus state (:mod:`.status`) and the run record (:mod:`.runs`). Nothing here knows the
steps' domain code or Prefect.
"""
