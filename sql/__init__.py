"""Forward-only schema migrations, shipped in the wheel as ``runner.sql``.

Files are named ``NNNN_description.sql`` and applied in order by ``runner.migrate``.
A landed file is never edited: change the schema with a new file.
"""
