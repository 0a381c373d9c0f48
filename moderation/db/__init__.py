"""The read model: SQLModel tables (`models`), the engine (`engine`) and the crud API (`crud`)."""
