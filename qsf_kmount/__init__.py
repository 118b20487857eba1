"""The kernel backend: mounting Linux v9fs over trans=fd."""
