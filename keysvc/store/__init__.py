"""Store backends behind one Protocol (base.Store)."""
