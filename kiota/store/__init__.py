"""The store: the one layer that talks to PostgreSQL.

Each module here owns the named queries of its area (`sql/queries/<area>.sql`) and turns rows
into the records of `kiota.records`; services and jobs call these functions with a connection
(or the pool) and get records, ids or plain values back — never an `asyncpg.Record`. A
transaction is the caller's: a service opens it and passes the connection to several calls.
"""
