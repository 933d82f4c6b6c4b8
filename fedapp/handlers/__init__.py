"""ClientApp message handlers, one module per protocol; registered in :mod:`fedapp.client_app`."""
