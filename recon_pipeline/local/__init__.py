"""The local environment: embedded PostgreSQL and secantusdb, `make dev`, demo data with
drift, and where the URLs and the mapping come from when nothing is configured."""
