"""The bulk path: dataset import jobs for backfills (``ingestor import``) and catch-up inside ``ingestor run``.

``store`` keeps the newest record per id on disk, ``staging`` writes Personalize's CSV to S3 by multipart upload,
``importer`` reads an offset range, stages it, runs the job and commits only once the job is ACTIVE.
"""
