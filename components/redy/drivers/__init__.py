"""Drivers of real devices (SunSpec over Modbus TCP, OCPP 1.6J, Zigbee2MQTT): the wall-clock
counterparts of the models in redy.devices, chosen by name through its registry."""
