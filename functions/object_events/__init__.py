"""The object-events source: object-storage notifications (SeaweedFS, S3/MinIO) → CloudEvents."""
