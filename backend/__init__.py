"""Label Studio ML backend (Flask): Grad-CAM pre-labels on /predict, annotations kept via /webhook.

Start it with ``labeler-backend`` (gunicorn); ``backend.app.create_app`` is the application factory.
"""
