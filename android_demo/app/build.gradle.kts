// The Android application: UI, ONNX Runtime sessions and storage. All host-side logic comes from :core.
plugins {
    id("com.android.application")
    id("org.jetbrains.kotlin.android")
}

android {
    namespace = "com.raluedge.demo"
    compileSdk = 34

    defaultConfig {
        applicationId = "com.raluedge.demo"
        minSdk = 26
        targetSdk = 34
        versionCode = 1
        versionName = "0.1.0"
        ndk {
            // onnxruntime-android ships these ABIs; arm64 phones are the target, x86_64 is for the emulator.
            abiFilters += listOf("arm64-v8a", "x86_64")
        }
    }

    buildTypes {
        release {
            isMinifyEnabled = false
            signingConfig = signingConfigs.getByName("debug")
        }
    }

    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_1_8
        targetCompatibility = JavaVersion.VERSION_1_8
    }

    kotlinOptions {
        jvmTarget = "1.8"
    }

    // A bundle may be shipped inside the APK under assets/bundle (the built-in shapes bundle); graph files are
    // already compressed or incompressible, and uncompressed assets copy faster to app storage.
    androidResources {
        noCompress += listOf("ort", "onnx", "onnx_data", "json", "safetensors", "config")
    }
}

dependencies {
    implementation(project(":core"))
    // Keep this version equal to the onnxruntime that ralu-export used to write the .ort files (pyproject.toml):
    // an ORT-format model must be read by the same or a newer runtime.
    implementation("com.microsoft.onnxruntime:onnxruntime-android:1.32.0")
    implementation("androidx.activity:activity-ktx:1.9.2")
    implementation("androidx.core:core-ktx:1.13.1")
}
