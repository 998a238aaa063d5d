"""Directory backends (SQL, LDAP) and the plugins that use the directory: see docs/directory.md."""
